"""Real LiteLLM against a real `tally serve`, for RealClientTests (ops/slow-tests/real-clients).

Makes four calls through a LiteLLM Router whose deployments carry provider prefixes
(`openai/gpt-4o` for the public name `gpt-4o`, `anthropic/claude-sonnet-4` for
`claude-sonnet-4`), every completion mocked (`mock_response`, no network):

  plain      gpt-4o, 1,000 prompt + 500 completion tokens
  cached     gpt-4o, 2,000 prompt tokens of which 1,500 read from the provider's cache, 100 out
  anthropic  claude-sonnet-4, Anthropic-style usage: 3,000 prompt tokens of which 1,000 cache
             reads and 500 cache writes, 200 out (of which 50 reasoning)
  failed     gpt-4o, the provider answers 429 (a mocked RateLimitError, no retry)

LiteLLM's generic_api logger ships the four StandardLoggingPayloads to
POST /gateway/v1/logs?format=litellm in the chosen log format:
  json_array  the logger LiteLLM builds from GENERIC_LOGGER_ENDPOINT / GENERIC_LOGGER_HEADERS
  ndjson, single
              a named callback with `callback_type: generic_api` in `callback_settings`
              (the proxy's `callback_settings:` section), as docs/ingest.md shows
Then it flushes the logger and prints one JSON object on stdout:
  {"calls": {"plain": "<litellm_call_id>", …}, "posts": [{"status": 200, "body": "…"}, …]}
"""

import argparse
import asyncio
import json
import os
import sys
import time

# The model cost map is bundled with LiteLLM; never fetch it (the tests run offline).
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
# No periodic flush: on a slow machine it could send the first calls before the last one is
# queued. This script flushes once all four are queued, so each format's body holds all four.
os.environ["DEFAULT_FLUSH_INTERVAL_SECONDS"] = "3600"

import litellm  # noqa: E402
from litellm import Router  # noqa: E402
from litellm.integrations.generic_api.generic_api_callback import GenericAPILogger  # noqa: E402


def mocked(model: str, usage: dict) -> dict:
    return {
        "id": "chatcmpl-mocked",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": usage,
    }


CALLS = {
    "plain": ("gpt-4o", mocked("gpt-4o", {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500})),
    "cached": (
        "gpt-4o",
        mocked("gpt-4o", {"prompt_tokens": 2000, "completion_tokens": 100, "total_tokens": 2100,
                          "prompt_tokens_details": {"cached_tokens": 1500}}),
    ),
    "anthropic": (
        "claude-sonnet-4",
        mocked("claude-sonnet-4", {"prompt_tokens": 3000, "completion_tokens": 200, "total_tokens": 3200,
                                   "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 500,
                                   "completion_tokens_details": {"reasoning_tokens": 50}}),
    ),
    "failed": ("gpt-4o", None),
}


def logger_for(args) -> GenericAPILogger:
    endpoint = f"{args.tally}/gateway/v1/logs?format=litellm"
    if args.log_format == "json_array":
        os.environ["GENERIC_LOGGER_ENDPOINT"] = endpoint
        os.environ["GENERIC_LOGGER_HEADERS"] = f"Authorization=Bearer {args.secret}"
        logger = GenericAPILogger()
        litellm.callbacks = [logger]
        return logger
    litellm.callback_settings = {
        "tally": {
            "callback_type": "generic_api",
            "endpoint": endpoint,
            "headers": {"Authorization": f"Bearer {args.secret}"},
            "log_format": args.log_format,
        }
    }
    litellm.logging_callback_manager.add_litellm_callback("tally")
    return next(callback for callback in litellm.callbacks if isinstance(callback, GenericAPILogger))


def record_posts(logger: GenericAPILogger, posts: list) -> None:
    """Keeps Tally's answers (the logger itself only logs them at debug level)."""
    send = logger._post_with_retries

    async def recording(data: str):
        response = await send(data)
        posts.append({"status": response.status_code, "body": response.text})
        return response

    logger._post_with_retries = recording


async def run(args) -> dict:
    litellm.turn_off_message_logging = args.redact_messages
    logger = logger_for(args)
    posts: list = []
    record_posts(logger, posts)
    router = Router(model_list=[
        {"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o", "api_key": "sk-not-used"}},
        {"model_name": "claude-sonnet-4",
         "litellm_params": {"model": "anthropic/claude-sonnet-4", "api_key": "sk-not-used"}},
    ])
    metadata = {
        # What a LiteLLM proxy puts there for the virtual key that made the call. Each call gets
        # its own copy, as each proxy request does: the Router writes into it (model_group …),
        # and the payload is built from it only after the call returns.
        "user_api_key_hash": args.key_hash,
        "user_api_key_alias": "real-client-test",
        "user_api_key_end_user_id": "customer-42",
        "tags": ["real-client-test"],
    }
    calls = {}
    for name, (model, response) in CALLS.items():
        call_id = f"{args.prefix}-{name}"
        calls[name] = call_id
        mock = response or litellm.RateLimitError("mocked provider 429", llm_provider="openai", model=model)
        try:
            await router.acompletion(model=model, messages=[{"role": "user", "content": f"{name} call"}],
                                     mock_response=mock, metadata=dict(metadata), litellm_call_id=call_id,
                                     num_retries=0)
        except litellm.RateLimitError:
            if response is not None:
                raise
    # Success and failure handlers run as tasks after the call returns: wait until all four
    # payloads are queued, then send them the way the periodic flush would.
    deadline = time.monotonic() + 120
    while len(logger.log_queue) < len(CALLS) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    queued = len(logger.log_queue)
    await logger.flush_queue()
    return {"calls": calls, "queued": queued, "posts": posts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tally", required=True, help="base URL of tally serve, e.g. http://127.0.0.1:8080")
    parser.add_argument("--secret", required=True, help="the gateway secret")
    parser.add_argument("--key-hash", required=True, help="SHA-256 hex of the Tally API key the calls bill")
    parser.add_argument("--prefix", required=True, help="prefix of the litellm_call_ids")
    parser.add_argument("--log-format", choices=["json_array", "ndjson", "single"], default="json_array")
    parser.add_argument("--redact-messages", action="store_true", help="litellm.turn_off_message_logging")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
