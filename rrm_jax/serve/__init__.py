"""The judge as a service: ``rrm-jax serve`` (FastAPI + uvicorn, the ``[serve]`` extra).

``worker`` drives one sampling engine from one thread for every endpoint; ``app`` is the HTTP API (OpenAI
completions and chat, ``/v1/judge``, ``/v1/rank``, ``/v1/rewards``, OpenRLHF's ``/get_reward``, health and
metrics); ``cli`` loads the model, plans the engine and runs uvicorn.
"""
