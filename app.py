"""VoxQL: try, compare and retrain fine-tuned LLM adapters in the browser.

    python app.py [--profile cpu|gpu] [--model ID_OR_PATH] [--adapter PATH|none] [--engine NAME] [--engine-url URL]

Host and port follow GRADIO_SERVER_NAME and GRADIO_SERVER_PORT (Gradio's own variables).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading

import gradio as gr

from components.ask import build_ask_tab, close_session
from components.listen import build_listen_tab
from components.mic_transport import launch_kwargs
from components.train import build_train_tab
from components.train_projector import build_projector_section
from components.train_tags import build_tag_training_section
from pipelines.engine import ENGINE_ENV, ENGINE_URL_ENV, engine_choice, get_engine
from pipelines.errors import VoxQLError
from pipelines.profiles import Profile, resolve_profile
from pipelines.shutdown import exit_cleanly_on_sigterm
from pipelines.spaces import ensure_embedded_packages
from pipelines.speech.transcribe import warm_speech_engine
from pipelines.sql import sandbox
from pipelines.sql.demo_data import ensure_demo_databases

log = logging.getLogger("voxql")
THEME = gr.themes.Soft()  # (Gradio 6 takes the theme at launch)

INTRO = (
    "# VoxQL\n"
    "Ask your data in plain words: a fine-tuned model writes the SQL, a guard checks it and a read-only sandbox "
    "runs it. Nothing you type can change the data. **Listen** turns speech into a transcript with expressive tags "
    "that you can send as a question. **Train** fine-tunes a SQL adapter of your own and scores it on Spider."
)


def build_app(profile: Profile) -> gr.Blocks:
    demos = ensure_demo_databases()
    with gr.Blocks(title="VoxQL") as demo:
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Ask your data", id="ask"):
                ask = build_ask_tab(profile, demos)
            with gr.Tab("Listen", id="listen"):
                build_listen_tab(profile, ask.question, tabs)
            with gr.Tab("Train", id="train"):
                build_train_tab(profile, ask.adapter_picker, tabs)
                build_tag_training_section()
                build_projector_section()
        # The page closed: its upload folder goes now (Gradio keeps a closed session's state for an hour).
        demo.unload(close_session)
    demo.voxql_tabs = tabs  # for tests that drive tab switching
    return demo


def warm_up(profile: Profile) -> None:
    """Start the SQL workers and load the SQL and speech models in the background, so the first question (or
    recording) waits for none of them."""
    sandbox.warm_up()
    warm_speech_engine(profile)

    def load() -> None:
        try:
            get_engine(profile.sql_model, profile.sql_adapter)
        except VoxQLError as error:  # shown in the UI by the model status line
            log.error("the SQL model is not available: %s", error)

    threading.Thread(target=load, name="voxql-warm-up", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start the VoxQL app.")
    parser.add_argument("--profile", choices=["cpu", "gpu"], help="default: gpu with CUDA, else cpu (or VOXQL_PROFILE)")
    parser.add_argument("--model", help="SQL model id or path (or VOXQL_SQL_MODEL)")
    parser.add_argument("--adapter", help="SQL adapter id or path, or 'none' (or VOXQL_SQL_ADAPTER)")
    parser.add_argument("--engine", help="llamacpp, transformers, vllm or openai (or VOXQL_ENGINE); default: llamacpp "
                                         "for the embedded model where scripts/install.sh built it, else transformers")
    parser.add_argument("--engine-url", help="an OpenAI-compatible server to use (or VOXQL_ENGINE_URL)")
    parser.add_argument("--no-warm-up", action="store_true", help="load models on first use instead of at start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    # Every tab gets its engine from get_engine, which reads these: the flags are the variables' short form.
    for variable, value in ((ENGINE_ENV, args.engine), (ENGINE_URL_ENV, args.engine_url)):
        if value:
            os.environ[variable] = value
    try:
        engine_choice()  # an unknown engine name stops here, with the names to choose from
    except VoxQLError as error:
        parser.error(str(error))
    ensure_embedded_packages()  # on Spaces only: what scripts/install.sh does elsewhere
    profile = resolve_profile(args.profile, sql_model=args.model, sql_adapter=args.adapter)
    log.info("profile %s: sql model %s, adapter %s", profile.name, profile.sql_model, profile.sql_adapter)
    demo = build_app(profile)
    exit_cleanly_on_sigterm()  # so session folders and SQL workers are removed on the way out
    if not args.no_warm_up:
        warm_up(profile)
    # launch_kwargs(): the live microphone's chunk route, on the app Gradio builds (also on Spaces, which runs this)
    demo.queue(default_concurrency_limit=8, max_size=64).launch(theme=THEME, **launch_kwargs())


if __name__ == "__main__":
    main()
