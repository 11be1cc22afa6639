"""How long a converted scorer takes per image on this CPU (the export's latency line)."""

from __future__ import annotations

import time

import numpy as np

from ganspection_tf import console, edge

LATENCY_THREADS, LATENCY_WARMUP, LATENCY_RUNS = 1, 3, 10


def model_latency_ms(tflite_model: bytes, runs=LATENCY_RUNS) -> float:
    """Median milliseconds per image of a converted scorer alone on this CPU, one LiteRT thread, batch 1.

    The input is a mid-gray image: none of the variants has data-dependent control flow. A few warm-up runs
    come first (the first invocation allocates and packs weights).
    """
    from ai_edge_litert.interpreter import Interpreter

    with console.native_output_captured():
        interpreter = Interpreter(model_content=tflite_model, num_threads=LATENCY_THREADS)
        interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner()
    details = runner.get_input_details()[edge.INPUT_NAME]
    image = np.full(details["shape"], 128, dtype=np.uint8)
    timings = []
    for run in range(LATENCY_WARMUP + runs):
        started = time.perf_counter()
        runner(**{edge.INPUT_NAME: image})
        if run >= LATENCY_WARMUP:
            timings.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(timings))
