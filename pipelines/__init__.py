"""VoxQL pipelines: everything the app and the CLI share, with no Gradio import."""
