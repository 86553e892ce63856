#!/usr/bin/env python3
"""Chat with a local LLM in the terminal, keeping the conversation: python chat.py

Talks to Ollama's /api/chat. Commands: /reset, /save FILE, /load FILE, /system TEXT, /help, /quit.
Ctrl-C stops the current answer (the conversation stays); Ctrl-D quits.
"""

from __future__ import annotations

import argparse
import sys

from llm_experiment.conversation import Conversation
from llm_experiment.embedded import ensure_server
from llm_experiment.errors import OllamaError
from llm_experiment.hosts import default_model

HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /save FILE      save the conversation as JSON
  /load FILE      load a conversation saved with /save
  /system TEXT    set the system prompt (empty to remove it)
  /help           this help
  /quit           leave (or Ctrl-D)
Ctrl-C while the model answers stops the answer and keeps the conversation."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Chat with a local LLM through Ollama's API. The whole conversation is sent each turn, "
                    "so the model remembers what was said.",
        epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=default_model(), help="model name (default: $LLM_MODEL or smollm2:135m)")
    parser.add_argument("--server", help="server URL (default: $OLLAMA_HOST, else localhost:11434, else the "
                                         "embedded engine)")
    parser.add_argument("--system", help="system prompt: who the model should be, how to answer")
    parser.add_argument("--temperature", type=float, help="randomness, 0 for the likeliest answer")
    parser.add_argument("--seed", type=int, help="random seed, for repeatable answers")
    parser.add_argument("--budget", type=int, help="keep the history under about this many tokens by dropping "
                                                   "the oldest turns (the system prompt is always kept)")
    parser.add_argument("--load", metavar="FILE", help="start from a conversation saved with /save")
    return parser


def handle_command(line: str, conversation: Conversation) -> tuple[Conversation, bool]:
    """Run one /command; return the (maybe new) conversation and whether to quit."""
    command, _, arg = line.partition(" ")
    arg = arg.strip()
    if command in ("/quit", "/exit", "/bye"):
        return conversation, True
    if command == "/reset":
        conversation.reset()
        print("(conversation cleared)")
    elif command == "/system":
        conversation.system = arg or None
        print(f"(system prompt {'set' if arg else 'removed'})")
    elif command in ("/save", "/load") and not arg:
        print(f"usage: {command} FILE")
    elif command == "/save":
        try:
            conversation.save(arg)
        except OSError as exc:  # a folder, a missing folder, no permission: say so, keep talking
            print(f"(cannot save to {arg}: {exc.strerror or exc}; the conversation is kept)")
        else:
            print(f"(saved {len(conversation.history)} messages to {arg})")
    elif command == "/load":
        try:
            loaded = Conversation.load(arg, server=conversation.server, options=conversation.options)
        except OSError as exc:
            print(f"(cannot load {arg}: {exc.strerror or exc}; the conversation is kept)")
        except ValueError as exc:  # not JSON, or not a saved conversation; the message names the file
            print(f"(cannot load {exc}; the conversation is kept)")
        else:
            print(f"(loaded {len(loaded.history)} messages from {arg})")
            return loaded, False
    elif command == "/help":
        print(HELP)
    else:
        print(f"unknown command {command}; /help lists them")
    return conversation, False


def repl(conversation: Conversation) -> None:
    """Read a line, answer it or run the /command, until /quit or end of input."""
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            continue
        if not line:
            continue
        if line.startswith("/"):
            conversation, leave = handle_command(line, conversation)
            if leave:
                return
            continue
        try:
            for piece in conversation.ask_stream(line):
                print(piece, end="", flush=True)
            print()
        except KeyboardInterrupt:
            print("\n(answer interrupted; the conversation is kept)")
        except OllamaError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = {k: v for k, v in (("temperature", args.temperature), ("seed", args.seed)) if v is not None}
    try:
        with ensure_server(args.server) as server:  # an engine started here stops when the chat ends
            if args.load:
                conversation = Conversation.load(args.load, server=server, options=options or None)
            else:
                conversation = Conversation(args.system, model=args.model, budget=args.budget,
                                            options=options or None, server=server)
            print(f"Chatting with {conversation.model} at {server}. /help for commands, Ctrl-D to quit.")
            repl(conversation)
        return 0
    except (OllamaError, RuntimeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
