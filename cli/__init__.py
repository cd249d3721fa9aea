"""The `xmodal` command line: parse, call one library function, print."""
