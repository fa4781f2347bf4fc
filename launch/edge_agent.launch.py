"""Starts edge-agent next to the robot's ROS 2 nodes.

    ros2 launch launch/edge_agent.launch.py config_file:=/etc/edge-agent/agent.toml
    ros2 launch launch/edge_agent.launch.py node_name:=cloud_link namespace:=/picker07

The agent is a plain executable (not built with colcon), so it is started as a process
with the ROS arguments ros2 launch would give a node: the node name and namespace remaps
and the config_file parameter.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration


def _agent(context):
    executable = LaunchConfiguration("executable").perform(context)
    config_file = LaunchConfiguration("config_file").perform(context)
    node_name = LaunchConfiguration("node_name").perform(context)
    namespace = LaunchConfiguration("namespace").perform(context)
    cmd = [executable, "run", "--ros-args", "-r", f"__node:={node_name}", "-p", f"config_file:={config_file}"]
    if namespace:
        cmd += ["-r", f"__ns:={namespace}"]
    return [
        ExecuteProcess(
            cmd=cmd,
            name=node_name,
            output="screen",
            # Give the agent time to flush its outbox and disconnect cleanly.
            sigterm_timeout="15",
            # The agent exits with an error when its ROS 2 side has stopped (for
            # example after a debugger attached); start it again, as systemd does.
            respawn=True,
            respawn_delay=5.0,
        )
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value="/etc/edge-agent/agent.toml",
                              description="edge-agent configuration (TOML)"),
        DeclareLaunchArgument("node_name", default_value="edge_agent",
                              description="name of the agent's ROS 2 node"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the agent's ROS 2 node, e.g. /picker07"),
        DeclareLaunchArgument("executable", default_value="edge-agent",
                              description="path of the edge-agent binary"),
        OpaqueFunction(function=_agent),
    ])
