"""Reference models, each built by an importable factory named in a bundle's manifest."""
