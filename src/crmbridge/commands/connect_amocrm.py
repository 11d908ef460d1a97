"""`crmbridge connect --crm amocrm`: exchange an amoCRM integration's authorization code and store its tokens in the cache.

Called by the `connect` command (`crmbridge.commands.connect`) for `--crm amocrm`; the tokens go into the
cache's token store, where every crmbridge process of the account finds (and refreshes) the current pair.
"""

from __future__ import annotations

from typing import Any

import typer

from crmbridge.commands import common
from crmbridge.errors import ConfigError

#: where an admin gets a code: the integration's page, or the authorization URL the integration opens
AUTHORIZE_HINT = ("in amoCRM open Settings > Integrations > your integration > Keys and scopes and copy the "
                  "authorization code (valid for 20 minutes), or paste the whole address amoCRM redirected to")


def run(settings: Any, *, code: str | None = None, portal: str | None = None, listen: str | None = None,
        timeout: float = 300.0, as_json: bool = False, **_: Any) -> dict[str, Any]:
    """Exchange the code, store the pair, check it with GET /api/v4/account; print and return a report."""
    from crmbridge.connectors.amocrm import oauth
    from crmbridge.connectors.amocrm.client import AmoCRMClient
    from crmbridge.connectors.amocrm.reader import AmoCRMReader
    from crmbridge.connectors.registry import rate_file

    if listen:
        raise ConfigError("--listen is not available for amoCRM", hint=f"pass --code: {AUTHORIZE_HINT}")
    base_url = portal or settings.amocrm_base_url
    if not base_url:
        raise ConfigError("CRMBRIDGE_AMOCRM_BASE_URL is not set",
                          hint="set it to your account's address (https://<subdomain>.amocrm.ru) or pass --portal")
    if not code:
        code = typer.prompt(f"Authorization code ({AUTHORIZE_HINT})")
    pair = oauth.connect(settings, code or "", base_url=base_url)
    from crmbridge.connectors.amocrm.limiter import FileRateWindow

    shared = rate_file(settings.cache_path)
    client = AmoCRMClient(pair.details.get("base_url") or base_url, auth=oauth.oauth_auth_from(settings, base_url),
                          limiter=FileRateWindow(shared) if shared else None)
    with client:
        account = AmoCRMReader(client).account()
    report = {"crm": "amocrm", "account": pair.account, "account_id": account.get("id"), "name": account.get("name"),
              "cache": str(settings.cache_path), "expires_at": pair.expires_at}
    if as_json:
        common.print_json(report)
    else:
        common.console.print(f"[green]✓[/green] connected to the amoCRM account «{account.get('name')}» "
                             f"({pair.account}); tokens stored in {settings.cache_path} and refreshed as needed")
    return report
