"""A Fibonacci generator stepped with next(), then two coroutines that each yield to the
loop once, run with asyncio.gather. Seed: "Asyncio fundamentals" (generators, coroutines).
"""

import asyncio
from itertools import islice


def fib():
    a, b = 1, 1
    while True:
        yield a
        a, b = b, a + b


print(list(islice(fib(), 20)))

x = fib()
for i in range(20):
    n = next(x)
    print(f"{i:8} {n:8}")


async def fun_a():
    print("Running coroutine *a*.")
    await asyncio.sleep(0)
    print("Back in *a*.")
    return "result from *a*"


async def fun_b():
    print("Running coroutine *b*.")
    await asyncio.sleep(0)
    print("Back in *b*.")
    return "result from *b*"


async def main():
    # The seed awaits this at the top level (a notebook); a script needs asyncio.run.
    print(await asyncio.gather(fun_a(), fun_b()))


asyncio.run(main())
