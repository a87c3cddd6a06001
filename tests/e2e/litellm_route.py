"""Routes one chat completion to appld through LiteLLM's Router, as a site gateway would: appl
is an OpenAI-compatible backend with an API key and the site CA.

Usage: litellm_route.py '<json>' with base_url, api_key, ca and model. Prints the answer's text,
finish reason and usage as JSON.
"""

import json
import os
import sys

# Offline: LiteLLM must not fetch its model price map from the internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402


def main():
    cfg = json.loads(sys.argv[1])
    litellm.ssl_verify = cfg["ca"]
    litellm.telemetry = False
    router = litellm.Router(
        model_list=[
            {
                "model_name": "appl",
                "litellm_params": {
                    "model": "openai/" + cfg["model"],
                    "api_base": cfg["base_url"],
                    "api_key": cfg["api_key"],
                },
            }
        ],
        num_retries=0,
    )
    r = router.completion(
        model="appl",
        messages=[{"role": "user", "content": "Name a colour."}],
        temperature=0,
        max_tokens=12,
    )
    c = r.choices[0]
    print(
        json.dumps(
            {
                "text": c.message.content,
                "finish_reason": c.finish_reason,
                "usage": {
                    "prompt_tokens": r.usage.prompt_tokens,
                    "completion_tokens": r.usage.completion_tokens,
                },
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
