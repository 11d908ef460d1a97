"""The amoCRM (Kommo) v4 connector: client (transport, HAL, limits, retries), reader, writer, webhooks, OAuth."""
