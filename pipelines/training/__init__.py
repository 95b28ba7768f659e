"""Training: LoRA/QLoRA SFT of the SQL adapter (`train-sql`), its data, its model card.

Training builds its prompts with the same code the app and the evaluation use
(`pipelines.sql.pipeline.question_messages`, value hints included), and evaluates with `pipelines.spider.evaluate`: a training job never
has its own copy of prompt building, decoding or scoring.
"""
