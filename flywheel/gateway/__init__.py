"""The capture gateway: an OpenAI-compatible proxy that turns serving traffic into interaction logs.

``app`` (the ASGI app and its routes), ``state`` (the parts the routes share, built from the config), ``capture``
(write-ahead log → ``dt=`` partition objects), ``rows`` (the rows and feedback events, checked), ``upstream`` (the
aiohttp client to vLLM), ``routing`` (sticky champion / challenger split, shadow mode), ``aliases`` (which registry
versions the arms are), ``monitor`` (always-valid sequential test + guardrails → decisions applied through the
registry), ``offline`` (the same decision from the durable logs), ``decisions`` (those since the previous night,
for its summary), ``metrics`` (Prometheus text). Library layer: no
Prefect, no stages, no flows.
"""
