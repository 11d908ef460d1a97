"""The regulation commands end to end on a cache file: check (--live, --impact), audit (--deal, --json), schema, discover."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from crmbridge.cache.store import open_cache
from crmbridge.sandbox import catalog

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
NOW = datetime.now(timezone.utc).timestamp()


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory) -> Path:
    """A cache as `crmbridge sync` leaves it, filled from the seeded sandbox portal (no HTTP)."""
    from crmbridge.sandbox.seed import seed_portal
    from crmbridge.sandbox.state import PortalState

    state = PortalState(clock=lambda: NOW)
    seed_portal(state, deals=300, seed=5, now=NOW)
    path = tmp_path_factory.mktemp("cache") / "crmbridge.db"
    cache = open_cache(path)
    stamp = datetime.now(timezone.utc).isoformat()
    names = {0: "Проектные продажи", 1: "B2B новые клиенты", 2: "B2B постоянные клиенты", 3: "B2C"}
    with cache.atomic():
        for table, table_rows in state.cache_rows(stamp).items():
            cache.upsert(table, table_rows)
        cache.upsert("pipelines", [{"id": category, "name": name, "sort": category, "is_default": int(category == 0), "raw": "{}"}
                                   for category, name in names.items()])
        cache.upsert("stages", [{"status_id": stage.status_id, "category_id": category, "name": stage.name,
                                 "sort": stage.sort, "semantics": stage.semantics, "raw": "{}"}
                                for category, stages in catalog.STAGES.items() for stage in stages])
        cache.upsert("deal_fields", [{"field_name": field.name, "user_type_id": field.type, "label": field.label,
                                      "options": json.dumps([{"ID": str(o), "VALUE": v} for o, v in field.options]) if field.options else None,
                                      "raw": "{}"} for field in catalog.USER_FIELDS])
        cache.upsert("users", [{"id": user.id, "name": user.name, "last_name": user.last_name, "active": int(user.active),
                                "departments": json.dumps([user.department]), "raw": "{}"} for user in catalog.USERS])
    cache.close()
    return path


def crmbridge(monkeypatch, capsys, cache_file: Path, *args: str, mappings: Path = MAPPINGS) -> tuple[int, str, str]:
    from crmbridge import cli

    monkeypatch.setenv("CRMBRIDGE_CACHE_PATH", str(cache_file))
    monkeypatch.setenv("CRMBRIDGE_MAPPINGS_DIR", str(mappings))
    monkeypatch.setattr(sys, "argv", ["crmbridge", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_accepts_the_shipped_files(monkeypatch, capsys, cache_file) -> None:
    code, out, _ = crmbridge(monkeypatch, capsys, cache_file, "check", "--live")
    assert code == 0 and "ok" in out and "checked against cache" in out.replace("\n", " ")


def test_check_lists_every_problem_with_its_position(monkeypatch, capsys, cache_file, tmp_path) -> None:
    broken = (MAPPINGS / "regulation.yaml").read_text(encoding="utf-8")
    broken = broken.replace("probability: 25", "probability: 250").replace("    stale_after: 45d", "    stale_after: 45 days")
    (tmp_path / "regulation.yaml").write_text(broken, encoding="utf-8")
    (tmp_path / "bitrix24.yaml").write_text((MAPPINGS / "bitrix24.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    code, out, err = crmbridge(monkeypatch, capsys, cache_file, "check", mappings=tmp_path)
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any('"probability" is 250, out of range' in line for line in lines), err
    assert any('"45 days" is not a duration' in line for line in lines), err
    assert all(line.startswith(str(tmp_path / "regulation.yaml") + ":") for line in lines), err


def test_check_impact_counts_deals_per_rule(monkeypatch, capsys, cache_file) -> None:
    code, out, _ = crmbridge(monkeypatch, capsys, cache_file, "check", "--impact", "--json")
    report = json.loads(out)
    assert code == 0 and report["deals"] == 300
    assert set(report["impact"]) == {f"R{n}" for n in range(1, 12)}
    assert report["impact"]["R1"]["would_flag"] > 0


def test_audit_records_violations_and_groups_them(monkeypatch, capsys, cache_file) -> None:
    code, out, _ = crmbridge(monkeypatch, capsys, cache_file, "audit", "--json")
    first = json.loads(out)
    assert code == 0 and first["deals"] == 300 and first["violations"] == len(first["open"]) > 0
    assert first["opened"] == len({item["key"] for item in first["open"]})
    assert sum(first["by_rule"].values()) == first["violations"]
    assert sum(sum(counts.values()) for counts in first["by_manager"].values()) == first["violations"]
    code, out, _ = crmbridge(monkeypatch, capsys, cache_file, "audit", "--json")
    again = json.loads(out)
    assert (again["opened"], again["resolved"]) == (0, 0)  # nothing changed: nothing opens or resolves
    cache = open_cache(cache_file)
    try:
        assert cache.count("violations", "resolved IS NULL") == again["opened"] + first["opened"]
    finally:
        cache.close()
    code, out, _ = crmbridge(monkeypatch, capsys, cache_file, "audit")
    assert code == 0 and "Open violations by rule" in out and "Open violations by manager" in out


def test_audit_explains_one_deal(monkeypatch, capsys, cache_file) -> None:
    code, out, _ = crmbridge(monkeypatch, capsys, cache_file, "audit", "--deal", "7", "--json")
    explained = json.loads(out)
    assert code == 0 and explained["deal"] == "7"
    assert [line["rule"] for line in explained["rules"]] == [f"R{n}" for n in range(1, 12)]
    assert {line["verdict"] for line in explained["rules"]} <= {"passed", "failed", "not_applicable"}
    # the table a person reads labels verdicts in the regulation's language (issue 7, item 14)
    code, out, _ = crmbridge(monkeypatch, capsys, cache_file, "audit", "--deal", "7")
    verdicts = {line["verdict"] for line in explained["rules"]}
    words = {"passed": "соблюдено", "failed": "нарушено", "not_applicable": "не применяется"}
    assert code == 0 and all(words[verdict] in out for verdict in verdicts), out
    assert not any(f" {verdict} " in out for verdict in ("passed", "failed", "not_applicable")), out
    code, _, err = crmbridge(monkeypatch, capsys, cache_file, "audit", "--deal", "999999")
    assert code == 1 and "deal 999999 is not in the cache" in err


def test_schema_and_discover_write_files(monkeypatch, capsys, cache_file, tmp_path) -> None:
    code, _, _ = crmbridge(monkeypatch, capsys, cache_file, "schema", "--out", str(tmp_path))
    assert code == 0 and json.loads((tmp_path / "regulation.schema.json").read_text())["title"] == "crmbridge regulation"
    code, out, _ = crmbridge(monkeypatch, capsys, cache_file, "discover", "--out", str(tmp_path / "draft.yaml"), "--cache-only")
    assert code == 0 and "0 `todo` left" in out
    assert "C1:WON: won  # Оплачено (S)" in (tmp_path / "draft.yaml").read_text(encoding="utf-8")


def test_discover_on_a_fresh_install_starts_from_the_default_regulation(monkeypatch, capsys, cache_file, tmp_path) -> None:
    code, out, _ = crmbridge(monkeypatch, capsys, cache_file, "discover", "--cache-only", mappings=tmp_path)
    assert code == 0 and "wrote the default regulation" in out
    assert (tmp_path / "regulation.yaml").exists() and (tmp_path / "regulation.schema.json").exists()
    assert "0 `todo` left" in out and (tmp_path / "bitrix24.draft.yaml").exists()


def test_discover_never_overwrites_an_admins_file_without_force(monkeypatch, capsys, cache_file, tmp_path) -> None:
    precious = tmp_path / "regulation-copy.yaml"
    precious.write_text("# the admin's own work\n", encoding="utf-8")
    code, _, err = crmbridge(monkeypatch, capsys, cache_file, "discover", "--out", str(precious), "--cache-only")
    assert code == 1 and "does not overwrite" in err
    assert precious.read_text(encoding="utf-8") == "# the admin's own work\n"
    code, _, _ = crmbridge(monkeypatch, capsys, cache_file, "discover", "--out", str(precious), "--cache-only", "--force")
    assert code == 0 and "C1:WON: won" in precious.read_text(encoding="utf-8")
    # its own draft is rewritten freely, run after run
    for _ in range(2):
        code, _, _ = crmbridge(monkeypatch, capsys, cache_file, "discover", "--cache-only", mappings=tmp_path)
        assert code == 0 and (tmp_path / "bitrix24.draft.yaml").exists()
