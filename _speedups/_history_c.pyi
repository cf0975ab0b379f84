from _speedups._history_py import HistoryChannel as HistoryChannel
from _speedups._history_py import append_many as append_many
