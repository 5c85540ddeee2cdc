"""The official OpenAI Python SDK against a real `tally serve`, for RealClientTests
(ops/slow-tests/real-clients).

Lists the models of each --key with `client.models.list()` (GET /v1/models), then calls it with
--bad-key and catches the SDK's exception. Prints one JSON object on stdout:
  {"models": {"<key>": ["gpt-4o", …], …},
   "bad_key": {"class": "AuthenticationError", "status": 401, "message": "…", "code": "…"}}
"""

import argparse
import json
import sys

import openai


def model_ids(base_url: str, key: str) -> list:
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
    return [model.id for model in client.models.list()]


def bad_key_error(base_url: str, key: str) -> dict:
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
    try:
        client.models.list()
    except openai.APIStatusError as error:
        body = error.body if isinstance(error.body, dict) else {}
        return {"class": type(error).__name__, "status": error.status_code, "message": body.get("message"),
                "code": body.get("code"), "text": str(error)}
    return {"class": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--key", action="append", default=[], help="a Tally API key (repeatable)")
    parser.add_argument("--bad-key", required=True, help="a key Tally does not know")
    args = parser.parse_args()
    result = {
        "sdk": openai.__version__,
        "models": {key: model_ids(args.base_url, key) for key in args.key},
        "bad_key": bad_key_error(args.base_url, args.bad_key),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
