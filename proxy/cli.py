"""The ``fedi-filter`` command line: serve, egress, worker, check-config, scan, sweep, hash, bank."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from . import bankcli, sweep
from .app import SERVICES, build_services
from .config import ConfigError, load_config
from .egress import serve_egress
from .server import access_logger, build_app
from .workers import reload_on_sighup, run_worker, socket_url
import contextlib
from collections.abc import Callable


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # huggingface_hub gives its logger a stderr handler of its own on import, and the logger also
    # propagates to ours: every warning of the model hub client (offline retries, say) came out twice
    import huggingface_hub.utils.logging  # noqa: F401

    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OpenClipRecords(logging.getLogger().level))


class _OpenClipRecords(logging.Filter):
    """open_clip logs through the root logger (``logging.info(...)``): its records are named ``open_clip``
    instead of ``root``, and its step-by-step INFO lines (ten a model load) are kept for ``--log-level
    debug``; its warnings stay."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and f"{os.sep}open_clip{os.sep}" in record.pathname:
            record.name = "open_clip"
            if record.levelno == logging.INFO:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return self.level <= logging.DEBUG
        return True


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a faster loop for the proxy and the worker), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def cmd_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    factory = _event_loop_factory()
    logging.getLogger(__name__).info(
        "serving %d instance(s) from %s on %s:%d (%s event loop)", len(config.instances), config.source,
        config.server.host, config.server.port, "uvloop" if factory else "asyncio",
    )
    app = build_app(config)
    app.on_startup.append(_reload_on_sighup)
    web.run_app(app, host=config.server.host, port=config.server.port, print=None,
                access_log_class=access_logger(config, proxied=args.access_log), loop=factory() if factory else None)
    return 0


async def _reload_on_sighup(app: web.Application) -> None:
    reload_on_sighup(app[SERVICES])


def cmd_worker(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("FEDI_FILTER_WORKER_TOKEN", "")
    if not token:
        print("worker: pass --token or set FEDI_FILTER_WORKER_TOKEN", file=sys.stderr)
        return 2
    try:
        urls = [socket_url(u) for u in args.connect]
    except ValueError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    config = load_config(args.config)
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:  # uvloop: cheaper wake-ups per frame
        return runner.run(run_worker(config, urls, token, ca=args.ca, name=args.name))


def cmd_egress(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_egress(config))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{args.file}: OK")
    for inst in config.instances:
        hosts = ", ".join(inst.hosts) or "(default)"
        print(f"  instance {inst.name}: kind={inst.kind} upstream={inst.upstream or '-'} hosts={hosts} policy={inst.policy.name}")
    for policy in config.policies.values():
        signals = sorted({s for s, _ in policy.rules.signals()})
        labels = ", ".join(f"{r.name}->{policy.actions.get(r.name, 'accept')}" for r in policy.rules.labels)
        print(
            f"  policy {policy.name}: {len(policy.rules.concepts)} concepts, labels [{labels}], sources {signals}, "
            f"on_error={policy.on_error}, allow={len(policy.allow)}, deny={len(policy.deny)}"
        )
    return 0


async def _scan(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    instance = config.instance_named(args.instance) if args.instance else config.instances[0]
    if instance is None:
        raise ConfigError("", f"no instance named {args.instance!r}")
    services = build_services(config, persistent=False, fetch=False)
    pipeline = services.pipeline
    await services.start()
    try:
        await services.scorer.wait_ready()
    except Exception as exc:  # the classifier's reason is the message
        print(f"warning: {exc}; files get the policy's on_error ({instance.policy.on_error})", file=sys.stderr)
    refused = 0
    try:
        for name in args.files:
            try:
                data = await asyncio.to_thread(Path(name).read_bytes)
            except OSError as exc:
                print(f"{name}: cannot read: {exc}", file=sys.stderr)
                refused += 1
                continue
            verdict = await pipeline.judge(data, instance, "scan")
            refused += not verdict.accepted
            if args.json:
                print(json.dumps({"file": name, **verdict.to_json()}), flush=True)
            else:
                labels = ",".join(verdict.labels) or "-"
                extra = f" ({verdict.detail})" if verdict.detail else ""
                print(f"{name}: {verdict.action} labels={labels} by={verdict.decided_by}{extra}", flush=True)
    finally:
        await services.close()
    return 1 if refused else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedi-filter", description="Keep CSAM and unwanted media out of fediverse servers.")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the reverse proxy and validation API")
    p.add_argument("--config", help="config file (default: $FEDI_FILTER_CONFIG)")
    p.add_argument("--access-log", action="store_true",
                   help="also access-log reverse-proxied requests (server.access_log; off: only the API's own)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("egress", help="run the outbound proxy (mitmproxy) for the media a backend fetches")
    p.add_argument("--config", help="config file (default: $FEDI_FILTER_CONFIG)")
    p.set_defaults(func=cmd_egress)

    p = sub.add_parser("worker", help="load the models and score frames for serve/egress processes it dials out to")
    p.add_argument("--connect", action="append", required=True, metavar="URL",
                   help="a serve/egress process, e.g. https://filter.example:8090 (repeatable)")
    p.add_argument("--token", help="this worker's token, one of the proxy's workers.tokens "
                   "(default: $FEDI_FILTER_WORKER_TOKEN)")
    p.add_argument("--config", help="config file with the same classifier and policies (default: $FEDI_FILTER_CONFIG)")
    p.add_argument("--ca", help="CA bundle that signed the proxies' TLS certificates (a private CA)")
    p.add_argument("--name", help="name in the proxies' logs, metrics and audit rows (default: the hostname)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check-config", help="validate a config file and summarise it")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("scan", help="judge local files; exit 1 when any is refused")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--config", help="config file (default: $FEDI_FILTER_CONFIG)")
    p.add_argument("--instance", help="instance whose policy applies (default: the first)")
    p.add_argument("--json", action="store_true", help="one JSON verdict per line")
    p.set_defaults(func=lambda a: asyncio.run(_scan(a)))

    p = sweep.add_parser(sub)
    p.set_defaults(func=lambda a: asyncio.run(sweep.command(a)))
    bankcli.add_parsers(sub)

    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
