"""``conpool stress``: load the pool with a matrix of scenarios and report on it.

* :mod:`.cli`: the command line, the run and the terminal output;
* :mod:`.servers`: echo, HTTP/1.1 and TLS servers in a child process;
* :mod:`.proxy`: the latency-injecting TCP proxy;
* :mod:`.scenarios`: the scenario matrix, as data;
* :mod:`.protocols`: what the clients say (echo, HTTP/1.1, redis);
* :mod:`.runner`: one scenario, from the pool's tracer and stats to plain data;
* :mod:`.fleet`: the ``fleet`` scenario: N processes sharing one RedisBudget;
* :mod:`.report`, :mod:`.svg`: the self-contained HTML report and its charts.
"""
