"""The admin's files: the regulation (CRM-neutral) and the portal binding, their schema, loader and linter."""
