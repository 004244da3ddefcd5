"""LiveIdol's OBS side.

* ``liveidol_source.py``: the OBS script (Tools > Scripts) that registers the "LiveIdol" source; it and
  its helpers ``_ws.py`` (websocket client), ``_msgpack.py`` (decoder), ``_stream.py`` (stream client)
  and ``_libobs.py`` (ctypes bindings) use only the standard library, as OBS's Python may have nothing else.
* ``setup.py``: ``liveidol obs setup``, which adds the source to a running OBS over obs-websocket.
"""
