"""``conpool stress``: load the pool with a matrix of scenarios and report on it.

* :mod:`.cli`: the command line, the run and the terminal output;
* :mod:`.servers`: echo, HTTP/1.1 and TLS servers in a child process;
* :mod:`.proxy`: the latency-injecting TCP proxy;
* :mod:`.scenarios`: the scenario matrix, as data;
* :mod:`.protocols`: what the clients say (echo, HTTP/1.1, redis);
* :mod:`.runner`: one scenario, from the pool's tracer and stats to plain data;
* :mod:`.fleet`: the ``fleet`` scenario: N processes sharing one RedisBudget;
* :mod:`.measure`: what a run measures besides latency (each request's
  events, the event loop's lag, garbage collections, CPU);
* :mod:`.analysis`: where the requests' time went, and what the slowest share;
* :mod:`.chrome`: a scenario's trace for Perfetto (``--trace DIR``);
* :mod:`.report`, :mod:`.svg`, :mod:`.timeline`: the self-contained HTML
  report, its charts and its zoomable timeline.
"""
