"""Awaiting the task keeps main() alive until foo() is done, so "Ending foo" is printed.
Seed: "Asynchronous Programming in Python" (asyncio Tasks, the awaited variant).
"""

import asyncio


async def main():
    print("awaiting foo...")
    task = asyncio.create_task(foo("inside foo"))
    print("finished awaiting foo")
    await task


async def foo(text):
    print(text)
    await asyncio.sleep(1)
    print("Ending foo")


asyncio.run(main())
