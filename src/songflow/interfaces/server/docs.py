"""``/docs`` without a network: a self-contained page (no CDN, no external script or style) that lists the
endpoints and request/response models read from ``/openapi.json``, and the security schemes the API
declares (``bearer``: HTTP bearer, ``apiKey``: the ``X-API-Key`` header; ``/health`` needs neither)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>songflow API</title>
<style>
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{font-family:ui-monospace,monospace;background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}
pre{padding:.6rem;overflow:auto}.op{border-left:4px solid #68a;margin:1rem 0;padding:.2rem .8rem}
.m{font-weight:bold;text-transform:uppercase;margin-right:.5rem}details{margin:.3rem 0}
</style></head><body>
<h1>songflow REST API</h1>
<p>The machine-readable schema is <a href="/openapi.json">/openapi.json</a>. This page needs no network.</p>
<div id="out">Loading /openapi.json ...</div>
<script>
const ENT = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"};
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ENT[c]);
fetch("/openapi.json").then((r) => r.json()).then((doc) => {
  let html = "<h2>Endpoints</h2>";
  for (const [path, ops] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(ops)) {
      const sec = (op.security || []).map((s) => Object.keys(s).join("+")).join(" or ") || "none";
      const codes = Object.entries(op.responses || {}).map(([c, r]) => `${c}: ${esc(r.description || "")}`);
      html += `<div class="op"><p><span class="m">${method}</span><code>${esc(path)}</code> ` +
        `${esc(op.summary || "")}</p><p>auth: ${esc(sec)}</p><ul>` +
        codes.map((c) => `<li>${c}</li>`).join("") + "</ul></div>";
    }
  }
  html += "<h2>Security schemes</h2><pre>" +
    esc(JSON.stringify((doc.components || {}).securitySchemes || {}, null, 2)) + "</pre>";
  html += "<h2>Models</h2>";
  for (const [name, schema] of Object.entries((doc.components || {}).schemas || {})) {
    html += `<details><summary><code>${esc(name)}</code> ${esc(schema.description || "")}</summary>` +
      `<pre>${esc(JSON.stringify(schema, null, 2))}</pre></details>`;
  }
  document.getElementById("out").innerHTML = html;
}).catch((e) => { document.getElementById("out").textContent = "cannot read /openapi.json: " + e; });
</script></body></html>
"""


async def _docs(request: Request) -> HTMLResponse:
    return HTMLResponse(_PAGE)


def install_docs(app: FastAPI) -> None:
    """Serve the offline ``/docs`` page (the app is made with ``docs_url=None``: no CDN Swagger UI)."""
    app.add_route("/docs", _docs, include_in_schema=False)
