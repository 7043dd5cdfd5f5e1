"""The `featuredb` command line."""
