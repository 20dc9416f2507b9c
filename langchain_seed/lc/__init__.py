"""The LangChain face of the engine: text in, text out.

`options` (one call's options, checked by the engine's own option definitions), `text`
(incremental detokenizing, stop strings, input checks), `run` (`SeedRun`: a call's
generations streamed as text over the engine's request handles), `base` (fields and
factories shared by the models), `llms` (`SeedLLM`), `chat_models` (`ChatSeed`) and
`messages` (chat-template input, tool calls out). A request goes `SeedLLM.invoke` ->
`SeedRun` -> `SeedEngine.submit_many` -> the scheduler -> `engine/verify.py`.
"""
