"""scripts/fetch_landmark_locations.py against a loopback Commons + Wikidata server."""

from __future__ import annotations

import csv
import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
import urllib.parse

import pytest

from lmrec import locations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "fetch_landmark_locations.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("fetch_landmark_locations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fetch = _load_script()

# What the fake Commons knows, by normalized title.
COMMONS = {
    "Category:Eiffel Tower": {
        "coordinates": [{"lat": 48.858222, "lon": 2.2945, "primary": True, "globe": "earth"}]
    },
    "Category:Taj Mahal": {
        "coordinates": [{"lat": 27.175, "lon": 78.041944, "primary": True, "globe": "earth"}]
    },
    "Category:Statue of Liberty": {"pageprops": {"wikibase_item": "Q9202"}},
    "Category:Ha Long Bay": {"pageprops": {"wikibase_item": "Q8000001"}},  # a category item
    "Category:Olympus Mons": {"pageprops": {"wikibase_item": "Q520"}},  # on Mars: no location
}


def _p625(latitude, longitude, rank="normal", globe="http://www.wikidata.org/entity/Q2"):
    value = {"latitude": latitude, "longitude": longitude, "globe": globe}
    return {
        "rank": rank,
        "mainsnak": {"snaktype": "value", "datavalue": {"value": value}},
    }


WIKIDATA = {
    "Q9202": {
        "P625": [_p625(1.0, 1.0, rank="deprecated"), _p625(40.689167, -74.044444, "preferred")]
    },
    "Q8000001": {
        "P301": [
            {
                "rank": "normal",
                "mainsnak": {"snaktype": "value", "datavalue": {"value": {"id": "Q1"}}},
            }
        ]
    },
    "Q1": {"P625": [_p625(20.9, 107.2)]},
    "Q520": {"P625": [_p625(18.65, -133.8, globe="http://www.wikidata.org/entity/Q111")]},
}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fail_next = 0  # answer this many requests with 503 first
        self.fail_always = 0  # else this status for every request (0: none)
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - the name http.server calls.
        parsed = urllib.parse.urlparse(self.path)
        params = dict(urllib.parse.parse_qsl(parsed.query))
        with self.server.lock:
            self.server.requests.append({"path": parsed.path, **params})
            failing = self.server.fail_next > 0
            self.server.fail_next -= failing
            status = 503 if failing else self.server.fail_always
        assert "lmrec/" in self.headers["User-Agent"]
        if status:
            return self._send(status, {"error": "down"}, {"Retry-After": "0"})
        if parsed.path == "/commons/w/api.php":
            return self._send(200, _commons_answer(params))
        if parsed.path == "/wikidata/w/api.php":
            return self._send(200, _wikidata_answer(params))
        return self._send(404, {})

    def _send(self, status, payload, headers=None):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _commons_answer(params):
    """Like the API with colimit reached: the first answer carries one page's coordinates."""
    assert params["formatversion"] == "2" and params["format"] == "json"
    titles = params["titles"].split("|")
    assert len(titles) <= fetch.BATCH
    normalized = [{"from": t, "to": t.replace("_", " ")} for t in titles if "_" in t]
    pages, with_coordinates = [], 0
    for title in (t.replace("_", " ") for t in titles):
        known = COMMONS.get(title)
        page = {"title": title, **({"missing": True} if known is None else {})}
        for key, value in (known or {}).items():
            if key == "coordinates":
                with_coordinates += 1
                if (with_coordinates == 1) == ("cocontinue" in params):
                    continue
            page[key] = value
        pages.append(page)
    answer = {"batchcomplete": True, "query": {"normalized": normalized, "pages": pages}}
    if "cocontinue" not in params and with_coordinates > 1:
        answer["continue"] = {"cocontinue": "next", "continue": "||pageprops"}
    return answer


def _wikidata_answer(params):
    assert params["action"] == "wbgetentities"
    ids = params["ids"].split("|")
    assert len(ids) <= fetch.BATCH
    return {
        "entities": {
            q: {"id": q, "claims": WIKIDATA[q]} if q in WIKIDATA else {"id": q, "missing": ""}
            for q in ids
        }
    }


@pytest.fixture
def server():
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


CATEGORIES = {
    "1": "Eiffel_Tower",
    "2": "Statue_of_Liberty",
    "3": "Ha_Long_Bay",
    "4": "Nowhere_Land",
    "5": "Taj_Mahal",
    "6": "Olympus_Mons",
}


def _gldv2_dir(tmp_path, categories=CATEGORIES):
    root = tmp_path / "gldv2"
    root.mkdir()
    rows = ["landmark_id,category"] + [
        f"{i},http://commons.wikimedia.org/wiki/Category:{name}" for i, name in categories.items()
    ]
    (root / "train_label_to_category.csv").write_text("\n".join(rows) + "\n")
    train = ["id,url,landmark_id"] + [f"img{i}00,http://x/{i}.jpg,{i}" for i in categories]
    (root / "train.csv").write_text("\n".join(train) + "\n")
    return root


def _options(server, **overrides):
    values = {
        "commons_api": f"{server.url}/commons/w/api.php",
        "wikidata_api": f"{server.url}/wikidata/w/api.php",
        "fetch_retries": 2,
        "fetch_backoff_s": 0.0,
    }
    return fetch.FetchOptions(**{**values, **overrides})


def _read(path):
    with open(path, encoding="utf-8", newline="") as f:
        return {row["landmark_id"]: row for row in csv.DictReader(f)}


def test_fetch_finds_commons_and_wikidata_locations_and_resumes(server, tmp_path):
    landmarks = fetch.landmarks_of(str(_gldv2_dir(tmp_path)), ["1", "2", "3", "4", "5", "6", "99"])
    assert [lm.title for lm in landmarks][:2] == [
        "Category:Eiffel_Tower",
        "Category:Statue_of_Liberty",
    ]
    path = str(tmp_path / "locations.csv")
    server.fail_next = 1  # the first request gets a 503 and is retried
    summary = fetch.fetch_locations(landmarks, path, _options(server))

    assert summary.failed == {}
    assert (summary.found, summary.not_found, summary.kept) == (4, 2, 0)
    rows = _read(path)
    assert list(rows) == ["1", "2", "3", "4", "5", "6"]
    assert rows["1"] == {
        "landmark_id": "1",
        "name": "Eiffel_Tower",
        "latitude": "48.858222",
        "longitude": "2.2945",
        "source": "commons",
    }
    assert (rows["2"]["latitude"], rows["2"]["source"]) == ("40.689167", "wikidata")  # preferred
    assert (rows["3"]["latitude"], rows["3"]["longitude"]) == ("20.9", "107.2")  # via P301
    assert (rows["5"]["latitude"], rows["5"]["source"]) == ("27.175", "commons")  # continued
    for missing in ("4", "6"):  # no such category; coordinates on Mars
        assert (rows[missing]["latitude"], rows[missing]["source"]) == ("", fetch.NOT_FOUND)
    commons = [r for r in server.requests if r["path"].startswith("/commons")]
    assert len(commons) == 3  # the 503, the answer, its continuation
    assert commons[-1]["cocontinue"] == "next"

    # What prepare reads: by landmark id, rows without coordinates left out.
    found = locations.read_locations_csv(path, ["Tour Eiffel", "Ha Long", "Mars"], ["1", "3", "6"])
    assert found == {
        0: locations.Location(48.858222, 2.2945, locations.MIN_RADIUS_M, "commons"),
        1: locations.Location(20.9, 107.2, locations.MIN_RADIUS_M, "wikidata"),
    }

    before = len(server.requests)
    again = fetch.fetch_locations(landmarks, path, _options(server))
    assert (again.kept, again.found, len(server.requests)) == (6, 0, before)  # nothing asked


def test_server_errors_fail_only_their_landmarks_and_the_next_run_fetches_them(server, tmp_path):
    categories = {str(i): f"Place_{i}" for i in range(1, 250)}
    categories["7"] = "Eiffel_Tower"
    landmarks = fetch.landmarks_of(str(_gldv2_dir(tmp_path, categories)), sorted(categories))
    path = str(tmp_path / "locations.csv")
    server.fail_always = 500
    options = _options(server, fetch_retries=1)
    summary = fetch.fetch_locations(landmarks, path, options)

    assert len(summary.failed) == len(landmarks) == 249
    tried = fetch.FAILED_BATCHES_BEFORE_GIVING_UP
    assert len(server.requests) == tried * 2  # each batch: one try and one retry, then stop
    assert "HTTP 500" in summary.failed[landmarks[0].landmark_id]
    assert "not tried" in summary.failed[landmarks[-1].landmark_id]
    assert _read(path) == {}
    message = fetch.failure_message(summary, landmarks, "fetch_landmark_locations.py")
    assert "249 of 249 landmarks" in message and "... and 239 more" in message
    assert "1 (Category:Place_1): HTTP 500" in message

    server.fail_always = 0
    summary = fetch.fetch_locations(landmarks, path, options)
    assert summary.failed == {} and summary.found == 1 and summary.not_found == 248
    assert _read(path)["7"]["source"] == "commons"

    server.fail_always = 404  # not worth retrying
    client = fetch.Client("lmrec/test", retries=3, backoff_s=0)
    with pytest.raises(fetch.FetchError, match="HTTP 404"):
        client.get_json(options.commons_api, {"action": "query"})
    assert client.requests == 1


@pytest.mark.slow
def test_offline_names_what_it_could_not_fetch(tmp_path):
    """The real command, with nothing listening: status 2 and the landmarks it lacks."""
    probe = _Server()
    closed = probe.url
    probe.server_close()
    gldv2_dir = _gldv2_dir(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            f"--gldv2_dir={gldv2_dir}",
            f"--commons_api={closed}/w/api.php",
            "--fetch_retries=0",
            "--classes=1,2,3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Could not fetch the locations of 3 of 3 landmarks" in done.stderr, done.stderr
    assert "(Category:Eiffel_Tower): cannot reach" in done.stderr
    assert "run fetch_landmark_locations.py again" in done.stderr
    written = gldv2_dir / "landmark_locations.csv"
    assert written.read_text().strip() == ",".join(fetch.COLUMNS)
