"""Printing a task instead of awaiting it shows a pending Task, not its value; both tasks
get one step before asyncio.run() cancels them. Seed: "Asynchronous Programming in Python".
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
    task2 = asyncio.create_task(print_numbers())  # noqa: F841 (never awaited, on purpose)

    # need to get the {'data': 1} value from fetch_data
    print(task1)


asyncio.run(main())
