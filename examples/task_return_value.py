"""Awaiting a task gives its return value; meanwhile another task keeps printing numbers.
Seed: "Asynchronous Programming in Python" (fetch_data / print_numbers).
"""

import asyncio


async def fetch_data():
    print("Start fetching")
    await asyncio.sleep(2)  # mimicking fetching data via some request
    print("Done fetching")
    return {"data": 1}


async def print_numbers():
    for i in range(10):
        print(i)
        await asyncio.sleep(0.25)  # mimicking waiting for a response


async def main():
    task1 = asyncio.create_task(fetch_data())
    task2 = asyncio.create_task(print_numbers())

    # awaiting for task1 to be completed and then using
    # the value it returned
    value = await task1
    print(value)
    await task2


asyncio.run(main())
