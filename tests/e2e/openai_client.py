"""Drives appld's OpenAI-compatible API with the official `openai` package, as a client would.

Usage: openai_client.py '<json>' where the JSON holds base_url, api_key (null: none is sent),
ca (the site CA file), optionally cert and key (a client certificate), and calls: a list of
{"endpoint": "chat"|"completion", "stream": bool, "args": {...}}. Prints one JSON object per
call on its own line: the text, finish reason, usage, id, object and chunk count, or the
error's status, body and Retry-After header.
"""

import json
import ssl
import sys

import openai
from openai._types import Omit


def run(client, call, extra):
    endpoint, stream, args = call["endpoint"], call.get("stream", False), dict(call["args"], **extra)
    api = client.chat.completions if endpoint == "chat" else client.completions
    try:
        if not stream:
            r = api.create(**args)
            c = r.choices[0]
            text = c.message.content if endpoint == "chat" else c.text
            return {
                "text": text,
                "finish_reason": c.finish_reason,
                "usage": r.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}),
                "id": r.id,
                "object": r.object,
                "model": r.model,
            }
        out = {"text": "", "finish_reason": None, "usage": None, "chunks": 0, "ids": []}
        for chunk in api.create(stream=True, **args):
            out["chunks"] += 1
            if chunk.id not in out["ids"]:
                out["ids"].append(chunk.id)
            out["object"] = chunk.object
            if chunk.usage is not None:
                out["usage"] = chunk.usage.model_dump(
                    include={"prompt_tokens", "completion_tokens", "total_tokens"}
                )
            for c in chunk.choices:
                piece = (c.delta.content if endpoint == "chat" else c.text) or ""
                out["text"] += piece
                if c.finish_reason:
                    out["finish_reason"] = c.finish_reason
        return out
    except openai.APIStatusError as e:
        return {
            "error": {
                "status": e.status_code,
                "body": e.body,
                "retry_after": e.response.headers.get("retry-after"),
            }
        }


def main():
    cfg = json.loads(sys.argv[1])
    ctx = ssl.create_default_context(cafile=cfg["ca"]) if cfg.get("ca") else None
    if ctx is not None and cfg.get("cert"):
        ctx.load_cert_chain(cfg["cert"], cfg["key"])
    # The SDK's own HTTP client class (httpx, or httpx2 in newer releases), with our CA.
    http = openai.DefaultHttpxClient(verify=ctx if ctx is not None else True, timeout=120)
    # Without an API key the client certificate identifies the caller: send no Authorization.
    key = cfg.get("api_key")
    extra = {} if key else {"extra_headers": {"Authorization": Omit()}}
    client = openai.OpenAI(base_url=cfg["base_url"], api_key=key or "unused", http_client=http, max_retries=0)
    for call in cfg["calls"]:
        print(json.dumps(run(client, call, extra)), flush=True)
    models = client.models.list(**extra)
    print(json.dumps({"models": [m.id for m in models.data]}), flush=True)


if __name__ == "__main__":
    main()
