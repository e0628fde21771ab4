"""``layerlake ui``: a local, read-only web page over a warehouse (top floor, beside the CLI).

``app.UiApp`` answers requests (method, path, query string) with pages and JSON, and knows nothing of
sockets; ``server.serve`` puts it behind Python's threaded HTTP server on 127.0.0.1. Figures are the
Vega-Lite specifications of ``queries.figures`` (the same ones ``layerlake query`` saves as PNG), drawn
in the browser by the Vega JavaScript that ``vl-convert-python`` ships in its wheel: no CDN, nothing
fetched from the network.
"""
