"""False-positive report: every benign photo the installed packages ship, through every detector signal,
with the score distribution and the flag rate at a config's thresholds.

    .venv/bin/python bench/false_positives.py [--config config/cpu.yaml]

The labels are computed by the policy's own rules engine, exactly as the server does. CLIP is left out
here: no pip package ships real CLIP weights (shared/MODELS.md), and random weights say nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CORPUS, photo_image
from classifier import Classifier
from classifier.detectors import DETECTORS
from proxy.config import load_config


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config/cpu.yaml")
    args = ap.parse_args()
    config = load_config(args.config)
    signals = {(name, key) for name, cls in DETECTORS.items() for key in (cls.KEYS or ())}
    classifier = Classifier(config.classifier, signals)
    await classifier.start()
    await classifier.wait_ready()
    frames = [photo_image(n) for n in CORPUS]
    scores = await classifier.score(frames, set(DETECTORS))
    await classifier.close()

    print(f"{len(CORPUS)} benign photos: {', '.join(CORPUS)}\n")
    print(f"{'signal':40} {'min':>6} {'median':>6} {'p90':>6} {'max':>6}  top image")
    for sig in sorted(signals):
        values = [s[sig] for s in scores]
        if max(values) == 0:
            continue
        top = CORPUS[values.index(max(values))]
        p90 = statistics.quantiles(values, n=10, method="inclusive")[-1]
        print(f"{sig[0] + '.' + sig[1]:40} {min(values):6.3f} {statistics.median(values):6.3f} {p90:6.3f} {max(values):6.3f}  {top}")
    quiet = sorted(f"{s}.{k}" for s, k in signals if all(x[(s, k)] == 0 for x in scores))
    print(f"(never above nudenet's 0.2 floor on this corpus: {len(quiet)} signals)\n")

    for policy in config.policies.values():
        print(f"policy {policy.name!r} of {args.config}:")
        for concept in policy.rules.concepts:
            for sig, threshold in sorted(concept.thresholds.items()):
                flagged = [CORPUS[i] for i, s in enumerate(scores) if s.get(sig, float("-inf")) > threshold]
                print(f"  {concept.name}: {sig[0]}.{sig[1]} > {threshold}: {len(flagged)}/{len(CORPUS)} flagged {flagged or ''}")
        results = [policy.rules.evaluate(s) for s in scores]
        for rule in policy.rules.labels:
            flagged = [CORPUS[i] for i, r in enumerate(results) if rule.name in r.labels]
            rate = 100 * len(flagged) / len(CORPUS)
            action = policy.actions.get(rule.name, "accept")
            print(f"  label {rule.name!r} ({action}): {len(flagged)}/{len(CORPUS)} = {rate:.1f}% {flagged or ''}")


if __name__ == "__main__":
    asyncio.run(main())
