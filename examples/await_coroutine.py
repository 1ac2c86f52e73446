"""Awaiting a coroutine runs it to completion before main() goes on.
Seed: "Asynchronous Programming in Python" (the await keyword).
"""

import asyncio


async def main():
    print("awaiting foo...")
    await foo("inside foo")
    print("finished awaiting foo")


async def foo(text):
    print(text)
    await asyncio.sleep(1)


asyncio.run(main())
