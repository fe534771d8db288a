"""Reading the ray_oneencoder_* metrics of this Ray session as a Prometheus scraping the cluster would."""
from __future__ import annotations

import time


def job_counters(job: str, wanted: dict[tuple[str, str], float], timeout_s: float = 30) -> dict[tuple[str, str], float]:
    """Poll the node's Ray metrics agent (what a Prometheus scraping the cluster reads) until the job's
    ray_oneencoder_job_* counters reach ``wanted`` ({(sample name, modality or modality/stage): at least}); the sums
    over every worker's series."""
    from prometheus_client.parser import text_string_to_metric_families

    from pipeline.metrics import agent_addresses, merge_families, scrape

    deadline = time.monotonic() + timeout_s
    while True:
        text = merge_families([scrape(a) for a in agent_addresses()], ("ray_oneencoder_job_",))
        got: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("job") == job:
                    key = (sample.name, "/".join(sample.labels[k] for k in ("modality", "stage") if k in sample.labels))
                    got[key] = got.get(key, 0.0) + sample.value
        if all(got.get(k, 0) >= v for k, v in wanted.items()) or time.monotonic() > deadline:
            return got
        time.sleep(1)
