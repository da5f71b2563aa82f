"""The api's workflows, below the controllers and above the rest of ``api`` (decisions §48).

A controller reads the request (query, path, body bytes through ``api/body.py``), calls one
service function and returns its result as the declared response model. A service takes typed
arguments — the process's :class:`~api.state.ApiState` (or the parts of it it needs), the
caller (:class:`~api.services.context.Caller`: tenant scope, key, request id), validated models
— and returns plain objects; it never sees a Litestar request (``.importlinter`` forbids a
service to import litestar), so it can be called and tested without HTTP.

Layers (``lint-imports``): ``api.app`` <- ``api.controllers`` <- ``api.services`` <- the rest of
``api`` (auth, body, pagination, objects, commands, state, …). Controllers never import each
other; the rest of ``api`` never imports a service or a controller.
"""
