"""AIQ's BF reference machine in plain Python: one program, one agent-environment cycle per ``act``.

Written from Legg and Veness's description of the machine in their AIQ code: nested loops
run recursively, the work tape is a Python list addressed by a head in
[-tape_len, tape_len - 1] that wraps to 0 past either end, the input tape holds the agent's
past actions (reading past ``input_len - 1`` cells gives the middle symbol), the first output
cell is the reward symbol and the others are the observation.  The random symbols of ``%``
follow the library's documented scheme so that both sides draw the same: the j-th ``%`` of a
cycle run with seed s writes ``mix32(s + j * 0x9E3779B9) mod n``; the caller passes s (the
uint32 that ``jax.random.bits`` gives for the cycle's key).

``coverage`` counts how often each corner case was met (tape wraps, reads past the input,
cycles cut by the step limit, loop iterations, random draws), so a test can check that its
programs exercised them.
"""

from __future__ import annotations


def mix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser (fmix32) of ``h`` mod 2^32."""
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


class BFMachine:
    """AIQ's BF machine in plain Python, one program, one cycle per ``act``."""

    def __init__(self, program: str, n: int = 5, obs_cells: int = 1, tape_len: int = 100_000, input_len: int = 25,
                 step_limit: int = 1000):
        self.code = program if program.endswith("#") else program + "#"
        self.n, self.limit, self.L = n, step_limit, tape_len
        self.mid = (n - 1) // 2
        self.work = [self.mid] * tape_len
        self.inp = [self.mid] * input_len
        self.out = [self.mid] * (1 + obs_cells)
        self.head = 0
        self.seed = 0
        self.coverage = dict.fromkeys(("wrap_left", "wrap_right", "past_input", "overtime", "loops", "rand"), 0)

    def act(self, action: int, seed: int = 0) -> tuple[float, list[int], int]:
        """One cycle answering ``action``: (reward in [-1, 1], observation symbols, machine steps run)."""
        self.inp = [action] + self.inp[:-1]
        self.steps, self.in_head, self.out_head, self.over, self.draws = 0, 0, 0, False, 0
        self.seed = seed
        self.block(self.code)
        if self.steps == self.limit:
            self.coverage["overtime"] += 1
        m = (self.n - 1) / 2
        return (self.out[0] - m) / m, list(self.out[1:]), self.steps

    def block(self, code: str) -> None:
        """Run ``code`` from its start; a ']' hands control back to the loop that called."""
        i = 0
        while not self.over:
            if self.steps >= self.limit or self.out_head == len(self.out):
                self.over = True
                return
            self.steps += 1
            c = code[i]
            if c == "<":
                self.head -= 1
                if self.head < -self.L:
                    self.head = 0
                    self.coverage["wrap_left"] += 1
            elif c == ">":
                self.head += 1
                if self.head >= self.L:
                    self.head = 0
                    self.coverage["wrap_right"] += 1
            elif c == "+":
                self.work[self.head] = (self.work[self.head] + 1) % self.n
            elif c == "-":
                self.work[self.head] = (self.work[self.head] - 1) % self.n
            elif c == ",":
                if self.in_head >= len(self.inp) - 1:
                    self.work[self.head] = self.mid
                    self.coverage["past_input"] += 1
                else:
                    self.work[self.head] = self.inp[self.in_head]
                    self.in_head += 1
            elif c == ".":
                self.out[self.out_head] = self.work[self.head]
                self.out_head += 1
            elif c == "%":
                self.work[self.head] = mix32(self.seed + self.draws * 0x9E3779B9) % self.n
                self.draws += 1
                self.coverage["rand"] += 1
            elif c == "[":
                depth, j = 1, i
                while depth:
                    j += 1
                    depth += {"[": 1, "]": -1}.get(code[j], 0)
                body = code[i + 1: j + 1]  # the loop's instructions and its closing ']'
                while self.work[self.head] != self.mid and not self.over:
                    self.coverage["loops"] += 1
                    self.block(body)
                i = j
            elif c == "]":
                return
            elif c == "#":
                self.over = True
            i += 1
