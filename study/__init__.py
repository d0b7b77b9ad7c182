"""study: the end-to-end study pieces (tiny OPT organism, bundled samples, synthetic copying task, report)."""
