"""The trio shell: sockets, disk, discovery and watcher bridges. It executes effects."""
