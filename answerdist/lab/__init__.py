"""The shipped default: a toy crystallization ladder trained on the CPU, and `make demo`.

`answerdist.lab.ladder.build` plants a distinct answer distribution for every prompt of the task
suite, trains a tiny OLMo 2-architecture base on documents drawn from them, then an SFT model that
collapses each task onto one planted seed prompt, then DPO and REINFORCE stages that sharpen
inside that seed's support, and writes each stage as a Hugging Face checkpoint.
`answerdist.lab.demo` scores the ladder with the engine and checks that the analysis recovers what
was planted.
"""
