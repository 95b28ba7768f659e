"""The Ask tab's example list says which examples the shipped model gets wrong (from the verification file)."""

import gradio as gr

from components.ask import build_ask_tab
from pipelines.profiles import resolve_profile
from pipelines.sql.examples import NEEDS_GPU, read_verified


def test_known_wrong_examples_are_labelled():
    from pipelines.sql.demo_data import ensure_demo_databases

    demos = ensure_demo_databases()
    with gr.Blocks() as demo:
        build_ask_tab(resolve_profile("cpu"), demos)
    dataset = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "examples")
    _, verified = read_verified()
    first = next(iter(demos))
    assert [sample[0] for sample in dataset.samples] == demos[first].examples  # a click gives the plain question
    for question, label in zip(demos[first].examples, dataset.sample_labels):
        assert label == (question if verified[(first, question)] else f"{question} ({NEEDS_GPU})")
