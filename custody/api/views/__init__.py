"""The API's views, one module per role (and one for the channels' signed callbacks)."""
