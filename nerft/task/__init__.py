"""The task: labels, the instruction, the answer format (formatting, parsing, the stop rule, the
grammar) and the chat template around them. Nothing outside this package spells an answer format."""
