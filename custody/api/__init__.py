"""The REST API (``/api/v1/``): thin DRF views over the custody services and selectors. See docs/api.md."""
