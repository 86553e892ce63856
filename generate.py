#!/usr/bin/env python3
"""Ask a local LLM for a completion and stream the answer: python generate.py "Why is the sky blue?"

Talks to Ollama's /api/generate. With no --server and no OLLAMA_HOST, it uses the server on
localhost:11434, or starts the course's embedded engine when nothing answers there.
"""

from __future__ import annotations

import argparse
import sys

from llm_experiment.client import Reply, generate
from llm_experiment.embedded import ensure_server
from llm_experiment.errors import OllamaError
from llm_experiment.hosts import default_model
from llm_experiment.stats import format_summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Send a prompt to a local LLM through Ollama's API and print the answer as it is written.",
        epilog='examples:  python generate.py "Why is the sky blue?"\n'
               '           echo "Write a haiku about rain" | python generate.py --stats\n'
               '           python generate.py --server http://teacher:11434 --seed 42 --temperature 0 "Hi"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompt", nargs="?", default="-", help="the prompt; read from stdin when absent or -")
    parser.add_argument("--model", default=default_model(), help="model name (default: $LLM_MODEL or smollm2:135m)")
    parser.add_argument("--server", help="server URL, e.g. http://localhost:11434 (default: $OLLAMA_HOST, else "
                                         "localhost:11434, else the embedded engine)")
    parser.add_argument("--system", help="a system prompt: who the model should be, how to answer")
    parser.add_argument("--temperature", type=float, help="randomness: 0 always picks the likeliest word (default: "
                                                          "the model's, 0.8 in Ollama)")
    parser.add_argument("--seed", type=int, help="random seed: the same seed and prompt give the same answer")
    parser.add_argument("--num-predict", type=int, metavar="N", help="the most tokens the answer may have (default: "
                                                                     "the model's; Ollama's is no limit)")
    parser.add_argument("--no-stream", action="store_true", help="wait for the whole answer instead of streaming it")
    parser.add_argument("--stats", action="store_true", help="after the answer, print token counts, durations "
                                                             "and tokens/s (on stderr)")
    return parser


def read_prompt(arg: str) -> str | None:
    if arg != "-":
        return arg
    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.read().strip()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prompt = read_prompt(args.prompt)
    if not prompt:
        parser.error('no prompt: give one as an argument (python generate.py "Hello") or on stdin')
    chosen = (("temperature", args.temperature), ("seed", args.seed), ("num_predict", args.num_predict))
    options = {k: v for k, v in chosen if v is not None}

    printed = False  # whether part of an answer is on the screen (an error then starts on a new line)
    try:
        with ensure_server(args.server) as server:  # an engine started here stops when the block ends
            reply: Reply | None
            if args.no_stream:
                reply = generate(prompt, model=args.model, system=args.system, options=options or None,
                                 server=server)
                print(reply.text)
            else:
                with generate(prompt, model=args.model, system=args.system, options=options or None,
                              stream=True, server=server) as stream:
                    for piece in stream:
                        print(piece, end="", flush=True)
                        printed = True
                print()
                reply = stream.reply
        if args.stats and reply is not None:
            print(format_summary(reply.stats), file=sys.stderr)
        return 0
    except OllamaError as exc:
        print(f"{chr(10) if printed else ''}error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the embedded engine could not start, or is not installed (the client set)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n(interrupted)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
