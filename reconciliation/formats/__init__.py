"""Bank statement formats: bank files to one checked Statement model, and back."""
