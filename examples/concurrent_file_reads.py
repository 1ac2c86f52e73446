"""Several files read concurrently, each in a worker thread via asyncio.to_thread (the seed
uses aiofiles; the standard library's to_thread does the same job). Seed: "Reading Files".
"""

import asyncio
import os
import tempfile


# Synchronously reading a single file, run in a thread below
def read_file_sync(filepath):
    with open(filepath) as file:
        return file.read()


async def read_file_async(filepath):
    return await asyncio.to_thread(read_file_sync, filepath)


async def read_all_async(filepaths):
    tasks = [read_file_async(filepath) for filepath in filepaths]
    return await asyncio.gather(*tasks)


async def main(filepaths):
    data = await read_all_async(filepaths)
    print(data)


# The seed reads file1.txt and file2.txt; create them so the example runs anywhere.
with tempfile.TemporaryDirectory() as directory:
    filepaths = []
    for number in (1, 2):
        filepath = os.path.join(directory, f"file{number}.txt")
        with open(filepath, "w") as file:
            file.write(f"contents of file{number}.txt\n")
        filepaths.append(filepath)
    asyncio.run(main(filepaths))
