"""CLI command modules; each exposes `register(app)` and holds no business rules."""
