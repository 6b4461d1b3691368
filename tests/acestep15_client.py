"""A client of the ACE-Step 1.5 REST API that behaves as the official VST3 plugin and browser DAW do (written
from the contract, docs/acestep15_api.md): release a task, poll ``/query_result`` until its status leaves 0
(an unknown id stays 0, "still waiting"), then download every ``file`` of the decoded ``result``.

Used by tests/test_server_acestep15_api.py over an in-process client, and runnable against a live server:

    python tests/acestep15_client.py http://127.0.0.1:8001 --prompt "lofi piano" --duration 10 [--token KEY]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def release(http: Any, body: dict[str, Any] | None = None, *, token: str | None = None, **form: Any) -> str:
    """``POST /release_task`` as JSON (``body``) or, with ``form`` fields and ``files``, as multipart; the
    task id. The plugin sends its key in the body (``ai_token``); the DAW as ``Authorization: Bearer``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        answer = http.post("/release_task", json=body, headers=headers)
    else:
        files = form.pop("files", None)
        answer = http.post("/release_task", data=form, files=files, headers=headers)
    if answer.status_code != 200:
        raise RuntimeError(f"release_task: HTTP {answer.status_code}: {answer.text}")
    envelope = answer.json()
    if envelope.get("code") != 200 or envelope["data"]["status"] != "queued":
        raise RuntimeError(f"release_task: {envelope}")
    return str(envelope["data"]["task_id"])


def poll(
    http: Any, task_id: str, *, token: str | None = None, interval_s: float = 0.2, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Poll until the task's status is 1 (succeeded) or 2 (failed); its ``/query_result`` item with the
    ``result`` string decoded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = {"task_id_list": json.dumps([task_id])}  # the plugin sends a JSON string
        if token:
            body["ai_token"] = token
        answer = http.post("/query_result", json=body)
        if answer.status_code != 200:
            raise RuntimeError(f"query_result: HTTP {answer.status_code}: {answer.text}")
        (item,) = answer.json()["data"]
        if item["status"] != 0:
            return {**item, "result": json.loads(item["result"])}
        time.sleep(interval_s)
    raise TimeoutError(f"task {task_id} still running after {timeout_s} s")


def download(http: Any, item: dict[str, Any], *, token: str | None = None) -> list[bytes]:
    """Every output audio of a finished task (``GET`` of each result item's ``file``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out = []
    for entry in item["result"]:
        answer = http.get(entry["file"], headers=headers)
        if answer.status_code != 200:
            raise RuntimeError(f"{entry['file']}: HTTP {answer.status_code}: {answer.text}")
        out.append(answer.content)
    return out


def main() -> int:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--prompt", default="lofi piano, rain")
    ap.add_argument("--lyrics", default="[Instrumental]")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--token", default=None)
    ap.add_argument("--out", default="acestep15_client")
    args = ap.parse_args()
    with httpx.Client(base_url=args.url, timeout=60) as http:
        task = release(http, {"prompt": args.prompt, "lyrics": args.lyrics, "audio_duration": args.duration,
                              "audio_format": "wav", "batch_size": 1}, token=args.token)  # fmt: skip
        item = poll(http, task, token=args.token)
        if item["status"] != 1:
            print(json.dumps(item, indent=1))
            return 1
        for i, data in enumerate(download(http, item, token=args.token)):
            with open(f"{args.out}_{i}.wav", "wb") as f:
                f.write(data)
        print(json.dumps(item["result"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
