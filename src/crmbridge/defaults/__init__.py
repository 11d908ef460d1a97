"""Package data: the default regulation, for installs without the repository's mappings/ directory."""
