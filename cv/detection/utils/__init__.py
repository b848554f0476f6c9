"""Small shared helpers: command-line handling, safe file writing, downloads, plots."""
