"""A task that is never awaited is cancelled when asyncio.run() returns, so "Ending foo"
is never printed. Seed: "Asynchronous Programming in Python" (asyncio Tasks).
"""

import asyncio


async def main():
    print("awaiting foo...")
    task = asyncio.create_task(foo("inside foo"))  # noqa: F841 (never awaited, on purpose)
    print("finished awaiting foo")


async def foo(text):
    print(text)
    await asyncio.sleep(1)
    print("Ending foo")


asyncio.run(main())
