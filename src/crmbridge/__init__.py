"""crmbridge: make a hosted Bitrix24 (and amoCRM) follow the company's written sales regulation."""

__version__ = "0.1.0"
