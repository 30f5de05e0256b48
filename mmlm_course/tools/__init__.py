"""Teacher tools: the command line (`cli`), lesson building and execution (`notebooks`),
grading (`grading`), the benchmark (`benchmark`) and slides (`slides`).

No lesson module imports from here: the lessons are the course, these tools run it.
"""
