#!/usr/bin/env python3
"""Kernel cost of one send() on a loopback TCP connection on this machine, for context in
docs/benchmarks.md: a child process reads 2,000 connections with epoll while the parent writes
one 1,500-byte segment to each, ROUNDS times, and reports the parent's CPU time per send.
Usage: python3 bench/loopback_send_cost.py [ROUNDS]"""
import socket, os, time, select, sys
N=2000; ROUNDS=int(sys.argv[1]) if len(sys.argv)>1 else 20
ls=socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); ls.bind(('127.0.0.1',0)); ls.listen(4096)
port=ls.getsockname()[1]
pid=os.fork()
if pid==0:
    cs=[]
    for i in range(N):
        c=socket.create_connection(('127.0.0.1',port)); c.setblocking(False); cs.append(c)
    ep=select.epoll()
    for c in cs: ep.register(c.fileno(), select.EPOLLIN)
    fds={c.fileno():c for c in cs}
    got=0; want=N*ROUNDS*1500
    while got<want:
        for fd,_ in ep.poll():
            got+=len(fds[fd].recv(65536))
    os._exit(0)
ss=[]
for i in range(N):
    s,_=ls.accept(); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1); ss.append(s)
data=b'x'*1500
t0=time.process_time(); w0=time.time()
for r in range(ROUNDS):
    for s in ss: s.send(data)
    pass
t1=time.process_time()
os.waitpid(pid,0)
print("sender cpu per send us", (t1-t0)/(N*ROUNDS)*1e6, "wall", time.time()-w0)
