r"""Looks up where GLDv2 landmarks are, for lmrec.prepare --landmark_locations.

    python scripts/fetch_landmark_locations.py --gldv2_dir=data/gldv2 \
        --min_images_per_class=250 --num_classes=100 --user_agent="lmrec (you@example.org)"
    python -m lmrec.prepare --source=gldv2 --gldv2_dir=data/gldv2 --min_images_per_class=250 \
        --num_classes=100 --landmark_locations=data/gldv2/landmark_locations.csv

The GLDv2 selection flags pick the landmarks, as for scripts/download_gldv2.py
and prepare. train_label_to_category.csv names each landmark's Wikimedia
Commons category; its coordinates come from the Commons API (prop=coordinates,
up to 50 categories a request) or else from the category's Wikidata item
(P625 coordinate location, or that of the item its P301 "category's main topic"
names; wbgetentities, 50 items a request). The CSV (landmark_id, name,
latitude, longitude, source) keeps a row for every landmark looked up; one
without coordinates has empty ones and source "not_found".

Requests carry --user_agent (Wikimedia asks for a way to reach you), wait
--fetch_backoff_s doubling between retries, and honour Retry-After and maxlag.
The CSV is rewritten atomically as it grows, so an interrupted run keeps what it
found and the same command fetches only the rest. Offline, it says which
landmarks it could not fetch and how many, and exits with status 2.
"""

from __future__ import annotations

import csv
import dataclasses
import http.client
import io
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from absl import flags

from lmrec import __version__, atomic, cli, console, settings
from lmrec.data.sources import gldv2
from lmrec.errors import UserError

COLUMNS = ("landmark_id", "name", "latitude", "longitude", "source")
NOT_FOUND = "not_found"
BATCH = 50  # titles (Commons) and ids (Wikidata) per request: the APIs' limit for clients
MAX_RESPONSE_BYTES = 32 << 20
MAX_RETRY_AFTER_S = 120.0
SAVE_EVERY_S = 30.0  # the CSV is rewritten at most this often while fetching, and at the end
FAILED_BATCHES_BEFORE_GIVING_UP = 3  # in a row: the network is down, the rest is not tried
EARTH = "http://www.wikidata.org/entity/Q2"  # Wikidata's globe for Earth coordinates
RETRIED_STATUSES = (429, 500, 502, 503, 504)


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """This script's own settings, beside the GLDv2 selection (lmrec.data.sources.gldv2)."""

    locations_csv: str = settings.setting(
        "",
        "The CSV to write (and resume); default: <gldv2_dir>/landmark_locations.csv.",
    )
    commons_api: str = settings.setting(
        "https://commons.wikimedia.org/w/api.php", "Wikimedia Commons' MediaWiki API."
    )
    wikidata_api: str = settings.setting(
        "https://www.wikidata.org/w/api.php", "Wikidata's MediaWiki API (wbgetentities)."
    )
    user_agent: str = settings.setting(
        f"lmrec/{__version__} (scripts/fetch_landmark_locations.py)",
        "User-Agent of every request; add a contact (e-mail or URL), as Wikimedia's policy asks.",
    )
    fetch_retries: int = settings.setting(4, "Retries of a failed request (network, 429, 5xx).")
    fetch_backoff_s: float = settings.setting(
        2.0, "Seconds before the first retry, doubling with each one."
    )
    fetch_timeout_s: float = settings.setting(60.0, "Seconds a request may take.")


@dataclasses.dataclass(frozen=True)
class Landmark:
    landmark_id: str
    name: str  # the category's name, e.g. Eiffel_Tower
    title: str  # the Commons page, e.g. Category:Eiffel_Tower


@dataclasses.dataclass
class FetchSummary:
    """What a run did: rows found now, kept from before, and landmarks it could not fetch."""

    path: str
    found: int = 0
    not_found: int = 0
    kept: int = 0
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # landmark id -> why

    def describe(self) -> str:
        return (
            f"{self.path}: {self.found} landmarks located, {self.not_found} without coordinates, "
            f"{self.kept} kept from before, {len(self.failed)} not fetched"
        )


class FetchError(Exception):
    """A request that failed for good (after its retries, or one not worth retrying)."""


class Client:
    """GETs JSON from a MediaWiki API: User-Agent, timeout, retries with backoff."""

    def __init__(
        self,
        user_agent: str,
        retries: int = 4,
        backoff_s: float = 2.0,
        timeout_s: float = 60.0,
        sleep: Callable[[float], Any] = time.sleep,
    ):
        self.user_agent = user_agent
        self.retries = max(0, retries)
        self.backoff_s = max(0.0, backoff_s)
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.requests = 0

    def get_json(self, api: str, params: dict[str, str]) -> dict[str, Any]:
        """The API's answer to params.

        Raises:
          FetchError: the server kept failing, answered an error that a retry will
            not fix (404, an API error other than maxlag), or could not be reached.
        """
        url = f"{api}?{urllib.parse.urlencode({**params, 'format': 'json'})}"
        request = urllib.request.Request(
            url, headers={"User-Agent": self.user_agent, "Accept": "application/json"}
        )
        why, wait = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff_s * 2 ** (attempt - 1) + wait)
            wait = 0.0
            self.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    body = response.read(MAX_RESPONSE_BYTES + 1)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise FetchError(f"answer over {MAX_RESPONSE_BYTES >> 20} MB from {api}")
                payload = json.loads(body)
            except urllib.error.HTTPError as error:
                why = f"HTTP {error.code} {error.reason} from {api}"
                if error.code not in RETRIED_STATUSES:
                    raise FetchError(why) from None
                wait = _retry_after(error.headers.get("Retry-After"))
                continue
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", None) or error
                why = f"cannot reach {api}: {reason}"
                continue
            except ValueError:
                why = f"{api} did not answer JSON"
                continue
            api_error = payload.get("error") if isinstance(payload, dict) else None
            if api_error:
                why = f"{api} error {api_error.get('code')}: {api_error.get('info', '')}"
                if api_error.get("code") != "maxlag":
                    raise FetchError(why)
                wait = 5.0  # the servers are lagging: wait longer than the backoff alone
                continue
            if not isinstance(payload, dict):
                raise FetchError(f"{api} answered {type(payload).__name__}, not an object")
            return payload
        raise FetchError(f"{why} (after {self.retries + 1} tries)")


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value or 0)
    except ValueError:
        return 0.0  # an HTTP date: the backoff alone
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else 0.0


# --- the lookups ----------------------------------------------------------------------------


def landmarks_of(gldv2_dir: str, landmark_ids: Iterable[str]) -> list[Landmark]:
    """The Commons categories of landmark_ids, from train_label_to_category.csv.

    Landmarks the file does not name are left out (and counted on screen).

    Raises:
      UserError: train_label_to_category.csv is missing.
    """
    names = gldv2.category_names(gldv2_dir)
    if not names:
        path = os.path.join(gldv2_dir, gldv2.CATEGORY_FILE)
        raise UserError(
            f"{path} is missing or empty: fetch it with scripts/download_gldv2.py "
            f"--gldv2_dir={gldv2_dir}"
        )
    wanted = list(landmark_ids)
    unnamed = [landmark_id for landmark_id in wanted if not names.get(landmark_id)]
    if unnamed:
        console.say(
            f"{len(unnamed)} landmarks have no category in {gldv2.CATEGORY_FILE} and are "
            f"skipped (first: {', '.join(unnamed[:5])})"
        )
    return [
        Landmark(landmark_id, names[landmark_id], f"Category:{names[landmark_id]}")
        for landmark_id in wanted
        if names.get(landmark_id)
    ]


def lookup(
    landmarks: Sequence[Landmark], client: Client, commons_api: str, wikidata_api: str
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Coordinates of up to BATCH landmarks: Commons first, then Wikidata.

    Returns:
      ({landmark id: CSV row} for those answered, found or not,
       {landmark id: why} for those whose requests failed).
    """
    rows: dict[str, dict[str, str]] = {}
    try:
        pages = _commons_pages([lm.title for lm in landmarks], client, commons_api)
    except FetchError as error:
        return {}, {lm.landmark_id: str(error) for lm in landmarks}
    items: dict[str, str] = {}  # landmark id -> Wikidata item
    for landmark in landmarks:
        page = pages.get(landmark.title, {})
        point = _commons_point(page)
        if point is not None:
            rows[landmark.landmark_id] = _row(landmark, point, "commons")
        elif page.get("pageprops", {}).get("wikibase_item"):
            items[landmark.landmark_id] = page["pageprops"]["wikibase_item"]
        else:
            rows[landmark.landmark_id] = _row(landmark, None, NOT_FOUND)
    failed: dict[str, str] = {}
    by_id = {lm.landmark_id: lm for lm in landmarks}
    topics: dict[str, str] = {}  # landmark id -> the item its category item is about (P301)
    for stage, wanted in (("item", items), ("topic", topics)):
        if not wanted:
            continue
        try:
            claims = _wikidata_claims(sorted(set(wanted.values())), client, wikidata_api)
        except FetchError as error:
            failed.update({landmark_id: str(error) for landmark_id in wanted})
            continue
        for landmark_id, item in wanted.items():
            point = _wikidata_point(claims.get(item, {}))
            topic = _wikidata_item(claims.get(item, {}), "P301")
            if point is not None:
                rows[landmark_id] = _row(by_id[landmark_id], point, "wikidata")
            elif stage == "item" and topic:
                topics[landmark_id] = topic
            else:
                rows[landmark_id] = _row(by_id[landmark_id], None, NOT_FOUND)
    return rows, failed


def _commons_pages(titles: list[str], client: Client, api: str) -> dict[str, dict[str, Any]]:
    """Commons pages by the titles asked for (normalized and redirected names mapped back)."""
    params = {
        "action": "query",
        "prop": "coordinates|pageprops",
        "ppprop": "wikibase_item",
        "coprop": "globe",
        "colimit": "max",
        "titles": "|".join(titles),
        "redirects": "1",
        "formatversion": "2",
        "maxlag": "5",
    }
    by_title: dict[str, dict[str, Any]] = {}
    renamed: dict[str, str] = {}
    while True:
        payload = client.get_json(api, params)
        query = payload.get("query", {})
        for change in (*query.get("normalized", ()), *query.get("redirects", ())):
            renamed[change["from"]] = change["to"]
        for page in query.get("pages", ()):
            merged = by_title.setdefault(page.get("title", ""), {})
            for key, value in page.items():
                if key == "coordinates":
                    merged.setdefault("coordinates", []).extend(value)
                else:
                    merged[key] = value
        if "continue" not in payload:
            break
        params = {**params, **payload["continue"]}
    answer = {}
    for title in titles:
        final = title
        for _ in range(3):  # normalized, then redirected
            final = renamed.get(final, final)
        answer[title] = by_title.get(final, {})
    return answer


def _commons_point(page: dict[str, Any]) -> tuple[float, float] | None:
    coordinates = [c for c in page.get("coordinates", ()) if c.get("globe", "earth") == "earth"]
    primary = [c for c in coordinates if c.get("primary") is not False] or coordinates
    for entry in primary:
        point = _point(entry.get("lat"), entry.get("lon"))
        if point is not None:
            return point
    return None


def _wikidata_claims(ids: list[str], client: Client, api: str) -> dict[str, dict[str, Any]]:
    """Claims of Wikidata items by id (a missing item: {})."""
    claims: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), BATCH):
        payload = client.get_json(
            api,
            {
                "action": "wbgetentities",
                "ids": "|".join(ids[start : start + BATCH]),
                "props": "claims",
                "maxlag": "5",
            },
        )
        for item, entity in payload.get("entities", {}).items():
            claims[item] = entity.get("claims", {}) if isinstance(entity, dict) else {}
    return claims


def _statements(claims: dict[str, Any], prop: str) -> list[dict[str, Any]]:
    """prop's values, preferred rank first, deprecated ones left out."""
    order = {"preferred": 0, "normal": 1}
    found = []
    for statement in claims.get(prop, ()):
        snak = statement.get("mainsnak", {})
        if statement.get("rank") in order and snak.get("snaktype") == "value":
            found.append((order[statement["rank"]], snak.get("datavalue", {}).get("value")))
    return [value for _, value in sorted(found, key=lambda pair: pair[0]) if value]


def _wikidata_point(claims: dict[str, Any]) -> tuple[float, float] | None:
    for value in _statements(claims, "P625"):
        if isinstance(value, dict) and value.get("globe", EARTH) == EARTH:
            point = _point(value.get("latitude"), value.get("longitude"))
            if point is not None:
                return point
    return None


def _wikidata_item(claims: dict[str, Any], prop: str) -> str:
    for value in _statements(claims, prop):
        if isinstance(value, dict) and value.get("id"):
            return str(value["id"])
    return ""


def _point(latitude: Any, longitude: Any) -> tuple[float, float] | None:
    try:
        point = float(latitude), float(longitude)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in point) or abs(point[0]) > 90 or abs(point[1]) > 180:
        return None
    return point


def _row(landmark: Landmark, point: tuple[float, float] | None, source: str) -> dict[str, str]:
    latitude, longitude = (f"{v:.7f}".rstrip("0").rstrip(".") for v in point) if point else ("", "")
    return {
        "landmark_id": landmark.landmark_id,
        "name": landmark.name,
        "latitude": latitude,
        "longitude": longitude,
        "source": source,
    }


# --- the CSV --------------------------------------------------------------------------------


def read_rows(path: str) -> dict[str, dict[str, str]]:
    """The rows an earlier run wrote to path, by landmark id ({} when there is no file).

    Raises:
      UserError: path holds something this script did not write.
    """
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise UserError(
                    f"{path} has the columns {reader.fieldnames}, not {', '.join(COLUMNS)}: it was "
                    "not written by this script; choose another --locations_csv"
                )
            return {row["landmark_id"]: row for row in reader if row.get("landmark_id")}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"Cannot read {path}: {error}") from None


def write_rows(path: str, rows: dict[str, dict[str, str]]) -> None:
    """Writes the CSV atomically, rows ordered by landmark id (numerically)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for landmark_id in sorted(rows, key=lambda i: (len(i), i)):
        writer.writerow({key: rows[landmark_id].get(key, "") for key in COLUMNS})
    atomic.write_text(path, out.getvalue())


def fetch_locations(
    landmarks: Sequence[Landmark],
    path: str,
    options: FetchOptions = FetchOptions(),
    client: Client | None = None,
) -> FetchSummary:
    """Looks up the landmarks not in path yet and adds their rows to it.

    Rows already in path are kept and not asked again; path is rewritten every
    SAVE_EVERY_S seconds and at the end, also when interrupted. After
    FAILED_BATCHES_BEFORE_GIVING_UP batches in a row fail, the rest is not tried.

    Returns:
      What was found, kept and not fetched (FetchSummary.failed: id -> why).
    """
    client = client or Client(
        options.user_agent, options.fetch_retries, options.fetch_backoff_s, options.fetch_timeout_s
    )
    rows = read_rows(path)
    summary = FetchSummary(path=path, kept=sum(1 for lm in landmarks if lm.landmark_id in rows))
    todo = [lm for lm in landmarks if lm.landmark_id not in rows]
    saved_at = time.monotonic()
    failed_in_a_row = 0
    try:
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            if failed_in_a_row >= FAILED_BATCHES_BEFORE_GIVING_UP:
                reason = "not tried: the batches before it failed"
                summary.failed.update({lm.landmark_id: reason for lm in batch})
                continue
            found, failed = lookup(batch, client, options.commons_api, options.wikidata_api)
            rows.update(found)
            summary.failed.update(failed)
            summary.found += sum(1 for row in found.values() if row["source"] != NOT_FOUND)
            summary.not_found += sum(1 for row in found.values() if row["source"] == NOT_FOUND)
            failed_in_a_row = failed_in_a_row + 1 if len(failed) == len(batch) else 0
            console.say(
                f"{min(start + BATCH, len(todo))}/{len(todo)} landmarks looked up "
                f"({summary.found} located, {len(summary.failed)} failed)"
            )
            if time.monotonic() - saved_at > SAVE_EVERY_S:
                write_rows(path, rows)
                saved_at = time.monotonic()
    finally:
        write_rows(path, rows)
    return summary


def failure_message(summary: FetchSummary, landmarks: Sequence[Landmark], command: str) -> str:
    """What could not be fetched, how many, and how to go on."""
    title_of = {lm.landmark_id: lm.title for lm in landmarks}
    shown = list(summary.failed.items())[:10]
    lines = [
        f"  {landmark_id} ({title_of.get(landmark_id, '?')}): {why}" for landmark_id, why in shown
    ]
    more = len(summary.failed) - len(shown)
    return (
        f"Could not fetch the locations of {len(summary.failed)} of {len(landmarks)} landmarks:\n"
        + "\n".join(lines)
        + (f"\n  ... and {more} more" if more > 0 else "")
        + f"\n{summary.path} keeps the {len(landmarks) - len(summary.failed)} looked up; run "
        f"{command} again (online) to fetch the rest."
    )


def main(argv: list[str]) -> int:
    gldv2_options = settings.values(gldv2.Gldv2Options, flags.FLAGS)
    options = settings.values(FetchOptions, flags.FLAGS)
    path = options.locations_csv or os.path.join(gldv2_options.gldv2_dir, "landmark_locations.csv")
    selection = gldv2.select(gldv2_options, flags.FLAGS.seed)
    landmarks = landmarks_of(gldv2_options.gldv2_dir, sorted(selection.images))
    summary = fetch_locations(landmarks, path, options)
    console.say(summary.describe())
    if summary.failed:
        raise UserError(failure_message(summary, landmarks, os.path.basename(argv[0])))
    console.say(f"Next: python -m lmrec.prepare ... --landmark_locations={path}")
    return 0


if __name__ == "__main__":
    cli.run_stage(
        "download_gldv2", main, positional=False, extra=settings.flag_fields(FetchOptions)
    )
